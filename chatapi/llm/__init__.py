"""The model room: the local model in its own thread, the queue in front of it, prompts, and each
reply's event stream. It knows nothing of Flask or the database (chatapi/replies.py connects them)."""

import os

# llama.cpp's threads meet at a barrier after every operation of the model (hundreds per token). Left to
# spin there (OpenMP's default), a thread waiting for its partner burns a core that the server, the
# operating system or another process then takes from the partner, and on a box with as many threads as
# cores one token took 5 to 20 times as long whenever anything else ran (bench/batching.py measures it).
# Sleeping waiters cost nothing alone. Set before llama.cpp's OpenMP runtime loads; a user's own value stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
