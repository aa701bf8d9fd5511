"""The Gradio app over a trained run (`leccr app`)."""
