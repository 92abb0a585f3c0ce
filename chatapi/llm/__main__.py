"""`python -m chatapi.llm` (run by `make run`): assemble the bundled model into instance/models once."""

from pathlib import Path

from .model import default_model_path

print(default_model_path(Path(__file__).resolve().parents[2] / "instance" / "models"))
