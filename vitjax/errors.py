"""Errors a user can cause, reported as one clear message by `vitjax.main`."""


class UserError(Exception):
  """A mistake in configuration, data or checkpoints that the user can fix.

  The message says what is wrong and how to fix it. `vitjax.main` prints it
  without a traceback and exits with status 2.
  """
