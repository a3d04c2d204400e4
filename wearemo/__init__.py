"""wearemo."""
