"""Training: from a recipe to the objects of a run, and the Accelerate loop."""
