"""Faithfulness evaluation of the attribution methods: metrics (`metrics`), the `vbp eval` command (`cli`),
its sign-classifier section (`signs`) and report writing (`report`)."""
