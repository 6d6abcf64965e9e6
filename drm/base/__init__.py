"""What every stage shares: params, errors, the stage CLI, open_clip models, tables, atomic writes, torch.distributed."""
