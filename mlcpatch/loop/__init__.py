"""The latent loop (RecursiveMAS): agents hand hidden states to each other through links."""
