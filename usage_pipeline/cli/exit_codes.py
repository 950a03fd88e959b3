"""The command line's exit codes (SPEC section 9), in one place."""

EXIT_OK = 0  # everything processed ended well, or there was nothing to do
EXIT_FAILED = 1  # a file or a run failed
EXIT_USAGE = 2  # a usage, configuration or access error (broken catalog, missing bucket, S3 down...)
