"""Each ecosystem names the package a URL's body is (a build record's component), and
names none for its indexes, metadata and checksums."""

import pytest

from gateway.cache.rules import Package
from gateway.ecosystems.catalogue import BUILTIN

ECOSYSTEMS = {u.name: u.ecosystem for u in BUILTIN}

PACKAGES = [
    ("debian", "/debian/pool/main/c/curl/curl_7.88.1-10%2bdeb12u5_amd64.deb",
     Package("deb", "curl", "7.88.1-10+deb12u5", "debian", (("arch", "amd64"),))),
    ("debian", "/debian/pool/main/s/systemd/libudev1_1%3a252.22-1_arm64.deb",
     Package("deb", "libudev1", "1:252.22-1", "debian", (("arch", "arm64"),))),
    ("ubuntu", "/ubuntu/pool/main/a/apt/apt_2.4.5_amd64.deb",
     Package("deb", "apt", "2.4.5", "ubuntu", (("arch", "amd64"),))),
    ("alpine", "/alpine/v3.19/main/x86_64/py3-foo-2-1.2.3-r0.apk",
     Package("apk", "py3-foo-2", "1.2.3-r0", "alpine", (("arch", "x86_64"),))),
    ("pypi", "/packages/aa/bb/cc/Flask_Login-0.6.3-py3-none-any.whl",
     Package("pypi", "flask-login", "0.6.3")),
    ("pypi", "/packages/aa/bb/cc/zope.interface-6.0.tar.gz",
     Package("pypi", "zope-interface", "6.0")),
    ("npm", "/@types/node/-/node-20.1.0.tgz", Package("npm", "node", "20.1.0", "@types")),
    ("npm", "/@types%2fnode/-/node-20.1.0.tgz", Package("npm", "node", "20.1.0", "@types")),
    ("npm", "/left-pad/-/left-pad-1.3.0.tgz", Package("npm", "left-pad", "1.3.0")),
    ("maven", "/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar",
     Package("maven", "commons-lang3", "3.14.0", "org.apache.commons", (("type", "jar"),))),
    ("maven", "/maven2/g/a/1.0/a-1.0-sources.jar",
     Package("maven", "a", "1.0", "g", (("type", "jar"), ("classifier", "sources")))),
    ("go", "/github.com/!burnt!sushi/toml/@v/v1.3.2.zip",
     Package("golang", "toml", "v1.3.2", "github.com/BurntSushi")),
    ("crates", "/crates/serde/1.0.0/download", Package("cargo", "serde", "1.0.0")),
    ("crates", "/crates/serde/serde-1.0.0.crate", Package("cargo", "serde", "1.0.0")),
    ("rubygems", "/gems/nokogiri-1.15.4-x86_64-linux.gem",
     Package("gem", "nokogiri", "1.15.4", "", (("platform", "x86_64-linux"),))),
    ("rubygems", "/gems/rake-13.0.6.gem", Package("gem", "rake", "13.0.6")),
]

NOT_PACKAGES = [
    ("debian", "/debian/dists/bookworm/InRelease"),
    ("debian", "/debian/dists/bookworm/main/binary-amd64/Packages.xz"),
    ("alpine", "/alpine/v3.19/main/x86_64/APKINDEX.tar.gz"),
    ("pypi", "/simple/flask/"),
    ("pypi", "/pypi/flask/json"),
    ("pypi", "/packages/aa/bb/cc/flask-3.0.0-py3-none-any.whl.metadata"),
    ("npm", "/left-pad"),
    ("maven", "/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar.sha1"),
    ("maven", "/maven2/org/apache/commons/commons-lang3/maven-metadata.xml"),
    ("go", "/github.com/!burnt!sushi/toml/@v/v1.3.2.mod"),
    ("go", "/github.com/!burnt!sushi/toml/@v/list"),
    ("crates", "/se/rd/serde"),
    ("rubygems", "/info/rake"),
]


@pytest.mark.parametrize("ecosystem,path,package", PACKAGES)
def test_package_of_names_the_package(ecosystem, path, package):
    assert ECOSYSTEMS[ecosystem].package_of(path) == package


@pytest.mark.parametrize("ecosystem,path", NOT_PACKAGES)
def test_indexes_and_metadata_are_not_packages(ecosystem, path):
    assert ECOSYSTEMS[ecosystem].package_of(path) is None
