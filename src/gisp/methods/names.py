"""The method names the rest of the package may know without the registry (which imports torch)."""

DEFAULT_METHOD = "gisp"  # what --method is when not given
LEGACY_METHOD = "gisp"  # the method of runs written before run.json named one
BUILTIN = ("taylor", "wanda_sp", "flap", "shortgpt", "magnitude", "random_order")  # modules that register one each
