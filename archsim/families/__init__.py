"""Machine families, one package each (gpu/, tsp/, ...). Each registers itself with
``archsim.core.registry.register_arch``; the registry finds the packages by name."""
