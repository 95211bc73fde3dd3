//! Training and evaluation data: shapes-world synthetic scenes and LLaVA instruction JSON. Not
//! implemented yet: see the demo-model issue.
