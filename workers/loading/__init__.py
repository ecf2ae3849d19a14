"""Reading a model: the folder (config, tokenizer, weights, the sentence-transformers layout,
read or refused), tested library versions, weight loading, start-up resolution, the
transformers fallback and LoRA. May import heads/ and engine.input_builder (fallback only).
"""
