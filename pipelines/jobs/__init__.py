"""Jobs: the IO edges. Each job reads a source, applies pure transforms and writes Delta."""
