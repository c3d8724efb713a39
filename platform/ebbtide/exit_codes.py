"""The exit codes of every `ebbtide` command (a shell user's expectations)."""

EXIT_OK = 0
EXIT_FAILURE = 1  # run-time failure (ebbtide.errors.RunError)
EXIT_USAGE = 2  # bad usage or configuration (ebbtide.errors.UsageError)
EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM
