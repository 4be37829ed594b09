"""Presenting rollouts to people: the console views and ``-o json|yaml`` documents
(:mod:`.console`) and the HTML report (:mod:`.report`). Reads state, writes nothing back."""
