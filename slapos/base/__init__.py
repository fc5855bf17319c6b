"""Small pieces every part of the node stack shares: errors, configuration, logging."""
