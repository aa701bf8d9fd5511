"""The description-feature cache (`leccr build-slots`)."""
