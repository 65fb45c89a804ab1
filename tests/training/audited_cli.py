"""`python audited_cli.py LOG_DIR WATCH ARGS...`: `ganforge ARGS` (training.cli.main) under a Python audit hook
that records every file or folder this process creates, opens for writing, renames or removes under WATCH;
at exit the list goes to LOG_DIR/rank{RANK}.txt. Used under torchrun to see which ranks write."""
from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> int:
    log_dir, watch, argv = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3:]
    seen: list[str] = []

    def watched(path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)).startswith(watch)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and watched(args[0]):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
                seen.append(f"open {args[0]}")
        elif event in ("os.mkdir", "os.remove", "os.rmdir") and watched(args[0]):
            seen.append(f"{event} {args[0]}")
        elif event == "os.rename" and (watched(args[0]) or watched(args[1])):
            seen.append(f"{event} {args[0]} -> {args[1]}")

    sys.addaudithook(hook)
    from training.cli import main as cli_main

    try:
        return cli_main(argv)
    finally:
        fd = os.open(os.path.join(log_dir, f"rank{os.environ.get('RANK', '0')}.txt"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, "".join(line + "\n" for line in seen).encode())
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
