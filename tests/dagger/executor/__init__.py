"""A graph executor for the tests: runs the Dagger graphs the module builds, with the engine's semantics."""
