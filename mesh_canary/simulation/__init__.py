"""Simulation: synthetic traffic from a scenario in virtual time (:mod:`.traffic`), and
``mesh-canary simulate`` driving the engine over it (:mod:`.simulate`)."""
