"""The run machinery: the validated setting, the one stage chain and its cache, the results
schema, the images a user gives and the figures of a run."""
