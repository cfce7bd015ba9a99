"""`mlcpatch publish`: artifact folders to the Hugging Face Hub, .wasm and link files to GitHub
Releases. Every file is checked against the manifest before anything is sent, and every upload is
checked against its sha256 after."""
