//! Prefill policies for twig-guided token pruning (none, FastV, VLM layer n, random, twig) with
//! FinalWipe and visual budgets. Not implemented yet: see the TTP issue; today every prefill is
//! the unpruned `none` policy run by the decoders.
