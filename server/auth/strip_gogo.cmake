# Copies a .proto from IN to OUT without gogoproto: drops its import and
# every option line that names gogoproto, and the [(gogoproto.x) = y] field
# options. Run with cmake -DIN=... -DOUT=... -P strip_gogo.cmake.
file(READ ${IN} text)
string(REGEX REPLACE "import \"gogoproto/gogo.proto\";\n" "" text "${text}")
string(REGEX REPLACE "option \\(gogoproto\\.[^\n]*\n" "" text "${text}")
string(REGEX REPLACE " *\\[\\(gogoproto\\.[^]]*\\]" "" text "${text}")
file(WRITE ${OUT} "${text}")
