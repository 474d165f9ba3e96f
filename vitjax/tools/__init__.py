"""Command-line tools that work on vitjax workdirs."""
