"""File formats and hub interop: safetensors, train.py checkpoints, Hugging Face GPT-2 and PEFT."""
