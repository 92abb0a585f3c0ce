"""Run every benchmark: python -m bench."""

from bench import list_chats

if __name__ == "__main__":
    list_chats.main()
