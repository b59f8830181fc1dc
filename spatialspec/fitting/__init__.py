"""The parts of ``spatialspec fit`` beyond config parsing: resuming, random states, SLURM
requeue, experiment loggers. :mod:`spatialspec.training` wires them into one Lightning fit."""
