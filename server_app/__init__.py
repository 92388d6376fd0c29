"""The ServerApp: the FAL loop over Flower messages."""
