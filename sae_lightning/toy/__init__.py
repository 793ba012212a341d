"""The embedded model's corpus, tokenizer and pretraining recipe."""
