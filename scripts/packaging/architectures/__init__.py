"""Architecture files: the nn.Module code a checkpoint is loaded into at export."""
