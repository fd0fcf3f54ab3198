# cmake -DIN=file -DOUT=source.cpp -DSYMBOL=name -P embed_text.cmake: a C++ source defining
# crossmoe::games::SYMBOL (or NAMESPACE::SYMBOL with -DNAMESPACE=...) as the text of IN (a policy
# or a web page that ships inside the binary).
if(NOT NAMESPACE)
  set(NAMESPACE crossmoe::games)
endif()
file(READ ${IN} content)
file(WRITE ${OUT} "// Generated from ${IN} by src/games/embed_text.cmake; do not edit.\n"
  "namespace ${NAMESPACE} {\nextern const char ${SYMBOL}[];\nconst char ${SYMBOL}[] = R\"embedded(${content})embedded\";\n}\n")
