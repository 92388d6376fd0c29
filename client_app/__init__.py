"""The ClientApp: local training, evaluation, query actions, label ledger."""
