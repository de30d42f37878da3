"""What a user reads after a run: the end-of-refine analysis (`finish`) and the HTML report (`html`)."""
