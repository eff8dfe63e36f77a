"""Server mode's pieces: the app's generations (:mod:`dewy.server.supervisor`), started, health-checked, restarted
gracefully and adopted across dewy's restarts. The mode's deploy steps are :mod:`dewy.targets.server`."""
