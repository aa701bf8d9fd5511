"""The LECCR model: encoders, the slot/interaction module, losses."""
