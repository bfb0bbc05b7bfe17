"""What gisp writes into exports whose layers differ: the generic modeling file."""
