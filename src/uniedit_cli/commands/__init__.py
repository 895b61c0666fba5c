"""One module per subcommand: parse, resolve, call the library. No heavy imports at module level."""
