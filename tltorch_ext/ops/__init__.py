"""Hot-path operators: torch.ops.tltorch_ext.*, one module per op family."""
