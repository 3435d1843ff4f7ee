//! gllm: the inference front end (model knowledge lives here; machine code does not).
