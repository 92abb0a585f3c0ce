"""Internet mode: search the web, read the top pages safely, and rank their passages for a question.

Each step is its own module of plain functions; `research.gather` runs them in order.
"""
