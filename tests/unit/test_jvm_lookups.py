"""The remembered Py4J lookups (pipelines/core/jvm_lookups.py): what is kept, what is asked again."""
from __future__ import annotations

import pytest
from py4j import java_gateway as gw
from pyspark.sql import functions as F

from pipelines.core import jvm_lookups
from pipelines.core.session import build_spark


@pytest.fixture
def lookups(spark):
    """The cache as the session installed it, emptied first; installed again afterwards."""
    jvm_lookups.uninstall()
    assert jvm_lookups.install()
    yield jvm_lookups._INSTALLED
    jvm_lookups.uninstall()
    jvm_lookups.install()


def test_a_class_and_a_static_method_are_looked_up_once(spark, lookups):
    jvm = spark._jvm
    functions = jvm.org.apache.spark.sql.functions    # a package path: not through the view's lookup
    assert jvm.PythonUtils is jvm.PythonUtils         # a class by its imported name
    assert functions.col is functions.col              # a static method
    assert isinstance(functions.col, gw.JavaMember)
    # The remembered method still calls the JVM, each time with its own arguments.
    assert functions.col("a").toString() == "a"
    assert functions.col("b").toString() == "b"
    assert F.col("c")._jc.toString() == "c"


def test_fields_packages_and_misses_are_asked_every_time(spark, lookups):
    jvm = spark._jvm
    integer = jvm.java.lang.Integer
    assert integer.MAX_VALUE == 2**31 - 1
    # A static field's value can change: it is never kept, only methods and classes are.
    assert all(isinstance(v, (gw.JavaMember, gw.JavaClass)) for v in lookups["members"].values())
    assert not any(key[2] == "MAX_VALUE" for key in lookups["members"])
    # A name that is not a class (yet: an import may add it) is a package to Py4J: not kept.
    assert isinstance(jvm.NoSuchClassAnywhere, gw.JavaPackage)
    assert not any(key[2] == "NoSuchClassAnywhere" for key in lookups["classes"])
    with pytest.raises(Exception, match="does not exist in the JVM"):
        integer.noSuchMember
    assert not any(key[2] == "noSuchMember" for key in lookups["members"])
    # An inner class is a class: kept, and usable.
    entry = jvm.java.util.AbstractMap.SimpleEntry
    assert entry is jvm.java.util.AbstractMap.SimpleEntry
    assert entry("k", "v").getKey() == "k"


def test_uninstall_restores_py4j_and_the_switch_leaves_it_alone(spark, lookups, monkeypatch):
    patched = gw.JavaClass.__getattr__
    jvm_lookups.uninstall()
    assert gw.JavaClass.__getattr__ is not patched
    assert spark._jvm.PythonUtils is not spark._jvm.PythonUtils   # asked, and a new object, each time
    monkeypatch.setenv("LAKEHOUSE_JVM_LOOKUP_CACHE", "false")
    assert not jvm_lookups.install()
    assert spark._jvm.PythonUtils is not spark._jvm.PythonUtils


def test_the_session_builder_installs_the_lookups(spark):
    jvm_lookups.uninstall()
    assert build_spark("lakehouse-tests", shuffle_partitions=2) is spark   # the running session
    assert jvm_lookups._INSTALLED
    assert spark._jvm.PythonUtils is spark._jvm.PythonUtils
