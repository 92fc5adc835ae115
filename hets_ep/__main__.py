"""The ``hets-ep`` command (also ``python -m hets_ep``): stop signals are caught before the heavy
imports, so SIGINT/SIGTERM at any moment of start-up ends in one line, never a traceback."""


def main() -> None:
    from hets_ep import signals

    signals.stop.hold()
    from hets_ep.cli import main as command_line

    command_line()


if __name__ == "__main__":
    main()
