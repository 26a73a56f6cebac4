class OpenAIBackend: pass
