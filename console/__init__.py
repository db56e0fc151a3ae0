"""The bot team's console: teach and run the chatbot from a browser (see console/README.md)."""
