//! The twig (T decoder blocks + norm + LM head attached after base layer K): module, initialisation
//! from the backbone, checkpoint I/O. Not implemented yet: see the twig issue.
