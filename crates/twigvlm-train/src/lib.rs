//! Training with burn autodiff: the twig and the demo model. Not implemented yet: see the twig
//! and demo-model issues.
