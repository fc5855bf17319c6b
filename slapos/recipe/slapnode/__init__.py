"""zc.buildout recipes for software releases run by slapnode.

Each recipe lives in its own module and is registered as a `zc.buildout` entry point of the
`slapnode` distribution, so a profile names it `recipe = slapnode:<name>`:

======== ==================================================================================
config   read the partition's parameters, addresses and shared instances (slap-connection)
template render a Jinja2 template into a file
wrapper  write a program wrapper (etc/service, etc/run) without any shell in between
mkdir    create directories
password generate a password once, keep it in a 0600 file
publish  publish connection parameters to the master
request  request another instance (or a shared one) and read its connection parameters
promise  write an etc/promise executable checking a TCP port or a URL
cmmi     configure / make / make install a checksummed source tarball
======== ==================================================================================

Examples for each are in the README ("Writing software releases") and in software-release/.
"""
