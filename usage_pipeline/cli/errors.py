"""Command-line errors: an infrastructure or configuration error ends a command with one line and exit 2."""

from __future__ import annotations

import click

from usage_pipeline.cli.exit_codes import EXIT_USAGE
from usage_pipeline.core.errors import describe_infrastructure_error


class OneLineErrorsGroup(click.Group):
    """A click group whose commands end an infrastructure or configuration error with one line on
    stderr and exit 2 (SPEC 9), instead of a traceback; any other exception still shows its traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            line = describe_infrastructure_error(exc)
            if line is None:
                raise
            click.echo(line, err=True)
            ctx.exit(EXIT_USAGE)
