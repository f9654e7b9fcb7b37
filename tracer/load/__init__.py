"""What comes in: the model and its processor, the named checkpoints, the clip. Nothing here runs a forward."""
