"""Models and how they run: tasks, bundles, the engine, the volume cache, click guidance."""
