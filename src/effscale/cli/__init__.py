"""`effscale SUBCOMMAND ...`: one module per subcommand (cli/<name>.py), dispatched by
`effscale.cli.main.main` (the console script)."""
